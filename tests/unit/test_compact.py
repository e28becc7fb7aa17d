"""What projections store packed comes back as it was written."""

from __future__ import annotations

import json

from service_runtime import compact


def test_packed_values_and_texts_come_back() -> None:
    value = [{"id": "w1", "t": ["Apprentissage", "Vision"], "co": [{"n": "Françoise Beaufays"}]}, None, 3.5]
    assert compact.unpack(compact.pack(value)) == value
    assert json.loads(compact.unpack_text(compact.pack(value))) == value
    texts = [json.dumps({"topic": "profile.events", "envelope": {"data": {"n": "Ç"}}}), compact.dumps([1, "x"])]
    assert [json.loads(t) for t in compact.unpack_texts(compact.pack_texts(texts))] == [json.loads(t) for t in texts]
