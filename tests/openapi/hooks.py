"""Rules of docs/protocol.md that a schema cannot state, checked on every
answer of tests/openapi/run (schemathesis loads this file by its config)."""

import schemathesis


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@schemathesis.check
def pull_answers_after_the_cursor(ctx, response, case):
    """§5: changes with seq > cursor, in increasing seq; the answer's cursor is
    the last seq returned, or the request's cursor if none was."""
    if case.operation.path != "/v1/pull" or response.status_code != 200:
        return None
    cursor = _int((case.query or {}).get("cursor", 0))
    if cursor is None:
        return None
    page = response.json()
    seqs = [change["seq"] for change in page["changes"]]
    assert all(seq > cursor for seq in seqs), f"seqs {seqs} are not all after the cursor {cursor}"
    assert seqs == sorted(set(seqs)), f"seqs {seqs} are not strictly increasing"
    expected = seqs[-1] if seqs else cursor
    assert page["cursor"] == expected, f"cursor {page['cursor']} for a pull after {cursor} with seqs {seqs}"
    return None


@schemathesis.check
def push_answers_every_mutation_once(ctx, response, case):
    """§4.2: each mutation of an accepted push is acked or rejected, once, and
    the device's high-water mark is at least the highest id pushed."""
    if case.operation.path != "/v1/push" or response.status_code != 200:
        return None
    pushed = [m["mutation_id"] for m in case.body["mutations"]]
    answer = response.json()
    answered = [a["mutation_id"] for a in answer["acks"]] + [r["mutation_id"] for r in answer["rejected"]]
    assert sorted(answered) == sorted(pushed), f"pushed {pushed}, answered {answered}"
    assert answer["last_mutation_id"] >= max(pushed, default=0), (
        f"last_mutation_id {answer['last_mutation_id']} below a pushed id {max(pushed)}"
    )
    return None
