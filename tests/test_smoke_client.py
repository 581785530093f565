from __future__ import annotations

import trio_sqs


async def test_send_receive_delete(sqs: trio_sqs.SQSClient, queue_url: str) -> None:
    sent = await sqs.send_message(queue_url, "hello")
    received = await sqs.receive_messages(queue_url, wait_time=1, visibility_timeout=5)
    assert [m.message_id for m in received] == [sent.message_id]
    assert received.messages[0].body == "hello"
    result = await sqs.delete_message_batch(queue_url, [m.receipt_handle for m in received])
    assert result.ok and result.successful == ("0",)
