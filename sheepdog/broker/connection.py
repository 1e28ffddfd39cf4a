"""Opening a redis-py connection to the broker (submitter side).

URL rules and error messages live in ``urls``, shared with the workers'
``resp`` client.
"""

from __future__ import annotations

import time

import redis

from sheepdog.broker import urls

#: Seconds to wait for a TCP connect or a reply before calling the broker unreachable.
SOCKET_TIMEOUT = 30.0


def connect(url: str, *, attempts: int = 1, retry_delay: float = 1.0) -> redis.Redis:
    """A connected client for ``url``; tries ``attempts`` times before giving up."""
    urls.check_url(url)
    client = redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.ping()
            return client
        except redis.AuthenticationError as exc:
            raise urls.refused_password(url, exc) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc):
                raise urls.needs_password(url) from exc
            raise urls.unreachable(url, exc) from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise urls.unverified(url, exc) from exc  # it will not verify next time
            last = exc
            if attempt + 1 < attempts:
                time.sleep(retry_delay)
    raise urls.unreachable(url, last) from last
