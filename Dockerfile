# ktvtwist: the KTV room server (WebSocket room protocol + HTTP API on one port).
#
#   docker build -t ktvtwist .
#   docker run --rm -p 8888:8888 ktvtwist
#
# Options go after the image name, replacing the default command, e.g.
#   docker run --rm -p 8888:8888 ktvtwist \
#       twistd -n --pidfile= ktv --listen tcp:8888:interface=0.0.0.0 --language en
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

CMD ["twistd", "-n", "--pidfile=", "ktv", "--listen", "tcp:8888:interface=0.0.0.0"]
