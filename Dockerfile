# miningproxy: a Stratum mining pool proxy for Hathor.
#   docker build -t miningproxy .
#   docker run -p 8000:8000 -p 8080:8080 -v $PWD/my.toml:/etc/miningproxy.toml miningproxy
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hashing ./hashing
COPY miningproxy ./miningproxy
COPY configs ./configs
RUN pip install . && useradd --system --uid 10001 --home-dir /var/lib/miningproxy --create-home miningproxy

USER miningproxy
WORKDIR /var/lib/miningproxy

# 8000: Stratum for rigs. 8080: HTTP (/metrics, /health, websockets).
EXPOSE 8000 8080
# SIGTERM triggers a graceful shutdown (in-flight block submissions finish, workers stop).
STOPSIGNAL SIGTERM
ENTRYPOINT ["miningproxy"]
CMD ["run", "--config", "/etc/miningproxy.toml"]
