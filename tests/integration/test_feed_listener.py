"""The API's one pub/sub connection per process, against a real Redis server."""

from __future__ import annotations

import threading

import redis

from api.feed_listener import FeedListener, Message
from cli.redis_server import RedisServer
from tests.waiting import wait_until


def test_waiters_get_their_channels_messages_and_only_those(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    listener = FeedListener(redis.Redis.from_url(redis_server.url))
    with listener.subscribe("feed:a") as a, listener.subscribe("feed:a", "feed:b") as both:
        assert a.live and both.live, "subscribed and confirmed before the block"
        client.publish("feed:a", b"one")
        client.publish("feed:b", b"two")
        got_a, got_both = a.get(5), [both.get(5), both.get(5)]
        assert got_a is not None and (got_a.channel, got_a.data) == ("feed:a", b"one")
        assert {(m.channel, m.data) for m in got_both if m} == {
            ("feed:a", b"one"),
            ("feed:b", b"two"),
        }
        assert any(m is got_a for m in got_both), "one message, shared by its inboxes"
        assert a.get(0.3) is None
    wait_until(lambda: listener.channels == 0, timeout_s=5, what="channels left")
    wait_until(lambda: not client.pubsub_channels("feed:*"), timeout_s=5, what="Redis unsubscribed")


def test_a_lost_connection_wakes_every_waiter_once_subscribed_again(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    listener = FeedListener(redis.Redis.from_url(redis_server.url))
    woken: list[Message | None] = []
    with listener.subscribe("feed:lost") as inbox:
        waiter = threading.Thread(target=lambda: woken.append(inbox.get(30)))
        waiter.start()
        # What a Redis restart or a network cut does to the subscribed connection.
        assert client.client_kill_filter(_type="pubsub") >= 1
        waiter.join(timeout=30)
        [notice] = woken
        assert notice is not None and notice.channel == "feed:lost", "woken"
        assert notice.changed, "told to read the database again"
        client.publish("feed:lost", b"after")
        after = inbox.get(5)
        assert after is not None and after.data == b"after", "and subscribed again"
