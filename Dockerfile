# ktvtwist: the KTV room server (WebSocket room protocol + HTTP API on one port).
#
# The container listens on 0.0.0.0, where open auth would refuse to start, so
# the default command uses signed tokens. Mount the secret (at least 32 bytes,
# readable by uid 10001) read-only at /run/secrets/ktv_secret:
#
#   docker build -t ktvtwist .
#   docker run --rm -p 8888:8888 -v ./ktv_secret:/run/secrets/ktv_secret:ro ktvtwist
#
# Docker/Compose/Swarm and Kubernetes secrets: see docs/auth.md.
#
# A command after the image name replaces the default one, so it repeats the
# options it needs. Open mode, for local experiments only:
#   docker run --rm -p 127.0.0.1:8888:8888 ktvtwist \
#       twistd -n --pidfile= ktv --listen tcp:8888:interface=0.0.0.0 --insecure-open
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A plain (non-editable) install, so twistd finds twisted/plugins/ktv.py.
# Twisted's plugin cache is built here, as root: site-packages is read-only
# for the user the server runs as.
COPY . /tmp/ktvtwist
RUN pip install --no-cache-dir /tmp/ktvtwist \
    && rm -rf /tmp/ktvtwist \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ktv
USER ktv
WORKDIR /home/ktv

EXPOSE 8888

# Probes the port the default command listens on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=3)"]

CMD ["twistd", "-n", "--pidfile=", "ktv", "--listen", "tcp:8888:interface=0.0.0.0", \
     "--auth", "signed", "--secret-file", "/run/secrets/ktv_secret"]
