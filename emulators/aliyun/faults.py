"""The Aliyun emulator's faults, in-process or by ``POST /_control/<fault>``.
"""

from __future__ import annotations

from aiohttp import web

from ..base import fault_table


class Faults:
    """Misbehaviour on demand (mixed into ``AliyunCloud``).

    State it shares (set by ``AliyunCloud.__init__``): ``_fronts``, ``account``,
    ``bind_code``, ``garble_count``, ``push_after_bind``, ``refuse_all``, ``stats``,
    ``throttle_count``, ``tsl_as_string``. From the other concerns it calls ``_new_token``, ``add_device``,
    ``emit_event``, ``ota_progress``, ``remove_device``, ``set_property``, ``set_status``,
    ``topo_add``.
    """

    FAULTS = fault_table(
        "drop_mqtt", "throttle", "reject_token", "garble", "refuse_connect", "set_property",
        "emit_event", "set_status", "add_device", "remove_device", "topo_add", "ota_progress",
        "reset", bind_code="set_bind_code", tsl_as_string="set_tsl_as_string",
        push_after_bind="set_push_after_bind",
    )  # fmt: skip

    def drop_mqtt(self) -> int:
        n = len(self._fronts)
        for front in list(self._fronts):
            front.close()
        return n

    def throttle(self, count: int = 1) -> None:
        self.throttle_count = count

    def reject_token(self) -> None:
        self.account.iot_token = self._new_token()

    def set_bind_code(self, code: int | None = None) -> None:
        self.bind_code = code

    def garble(self, count: int = 1) -> None:
        self.garble_count = count

    def refuse_connect(self, on: bool = True) -> None:
        self.refuse_all = on

    def set_tsl_as_string(self, on: bool = True) -> None:
        self.tsl_as_string = on

    def set_push_after_bind(self, on: bool = True) -> None:
        self.push_after_bind = on

    def reset(self) -> None:
        self.throttle_count = 0
        self.bind_code = None
        self.garble_count = 0
        self.refuse_all = False
        self.push_after_bind = False

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.stats))

