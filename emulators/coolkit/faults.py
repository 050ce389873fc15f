"""The CoolKit emulator's faults, in-process or by ``POST /_control/<fault>``.
"""

from __future__ import annotations

import contextlib

from websockets.exceptions import ConnectionClosed

from ..base import fault_table


class Faults:
    """Misbehaviour on demand (mixed into ``CoolkitCloud``).

    State it shares (set by ``CoolkitCloud.__init__``): ``_fail_504``, ``_never_answer``,
    ``appid``, ``conns``, ``sessions``, ``users``. From the other concerns it calls
    ``_new_session``, ``_take_over``, ``push``, ``set_online``.
    """

    FAULTS = fault_table(
        "drop", "stall", "garble", "never_answer", "fail_504", "expire_tokens", "kick", "push",
        "set_online", "reset",
    )  # fmt: skip

    def drop(self) -> None:
        for conn in list(self.conns):
            conn.ws.transport.abort()

    def stall(self) -> None:
        for conn in self.conns:
            conn.stalled = True

    async def garble(self, count: int = 1) -> None:
        count = int(count)
        for conn in list(self.conns):
            if conn.session is not None and not conn.stalled:
                for _ in range(count):
                    with contextlib.suppress(ConnectionClosed):
                        await conn.ws.send('{"action":"update","deviceid":')

    def never_answer(self, count: int = 1) -> None:
        self._never_answer += int(count)

    def fail_504(self, count: int = 1) -> None:
        self._fail_504 += int(count)

    def expire_tokens(self) -> None:
        for sess in self.sessions.values():
            sess.at_expires = 0.0

    async def kick(self, email: str = "demo@example.com") -> None:
        """Another client logs in to the same account and app: the session is taken."""
        await self._take_over(self._new_session(self.users[str(email)], self.appid, 2))


    def reset(self) -> None:
        self._never_answer = self._fail_504 = 0
        for conn in self.conns:
            conn.stalled = False
