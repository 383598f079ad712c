"""What every web process shares, whoever starts it: `make run` (scripts/run.py), the Docker image
and docker-compose all run `gunicorn -c saas/gunicorn_conf.py …`; their command lines add only the
address, processes, threads and timeout. See docs/deploying.md.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from apps.core.redaction import RedactUrlSecrets

# An idle keep-alive connection is closed by whichever side times out first. With gunicorn's default
# (2 s), gunicorn closes first: the load balancer or proxy in front keeps its side open longer (AWS
# ALB 60 s, nginx 60 s), and a request it sends down a connection as gunicorn closes it is reset,
# a 502 to the client. A client polling every 2 s meets that race on almost every request. So
# gunicorn waits longer than the balancer: raise this above your balancer's idle timeout if that is
# longer. gthread keeps idle connections in its poller, not in a thread: waiting costs no capacity.
keepalive = 75

# The access log, on stdout, in the usual combined format.
accesslog = "-"


class RedactingLogger(Logger):
    """gunicorn's logger, with invitation and password-reset tokens cut out of its access lines (the
    request line and the Referer) and of its error lines (apps/core/redaction.py)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.addFilter(RedactUrlSecrets())


logger_class = RedactingLogger
