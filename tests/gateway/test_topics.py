"""Topic names: ids percent-encoded, commands parsed, our own replies never taken for commands."""

from __future__ import annotations

from gateway.topics import BadCommandTopic, CommandTopic, Topics, decode_id, encode_id

T = Topics("base")


def test_ids_are_percent_encoded_reversibly() -> None:
    for raw in ("ABC/light1", "a+b#c", "$sys", "100%", "x\x00y"):
        assert decode_id(encode_id(raw)) == raw
    assert T.device("tencent", "ABC/light1") == "base/tencent/ABC%2Flight1"


def test_commands_and_set_prop_with_a_reserved_name() -> None:
    assert T.parse("base/v/ABC%2Fd/set") == CommandTopic("v", "ABC/d", "set")
    assert T.parse("base/v/d/set/set_") == CommandTopic("v", "d", "set", "set")
    assert T.parse("base/bridge/request/health") == "health"


def test_an_unencoded_id_is_a_bad_command_with_the_encoded_form() -> None:
    bad = T.parse("base/tencent/P/d1/set")
    assert isinstance(bad, BadCommandTopic)
    assert "base/tencent/P%2Fd1/set" in bad.reason
    assert bad.response_topic == "base/tencent/P/d1/response/set"


def test_our_own_replies_are_not_commands() -> None:
    """The subscription for unencoded ids (base/+/+/+/set) also matches …/response/set: the
    gateway must not answer its own reply as a bad command."""
    for kind in ("set", "get", "action"):
        assert T.parse(f"base/v/d/response/{kind}") is None
