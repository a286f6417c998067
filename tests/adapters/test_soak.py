"""The soak command (benchmarks/soak.py): its checker catches what it claims to, and a
few seconds of it against the real server pass every check."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "benchmarks" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_checker_counts_loss_duplicates_reordering_and_misdelivery():
    soak = load_soak()
    log, totals = soak.Log(), soak.Totals()
    client = soak.Client("u1", log, totals)
    client.authed_at = 10.0
    # Published after the client's auth: to everyone, to this user, to another user.
    for n, user in enumerate([None, "user_u1", "user_u2", None, None, None], start=1):
        log.add(soak.Published(f"{n:04d}", user, sent_at=10.0 + n, acked_at=10.5 + n))
    # 0001 twice, 0002 fine, 0003 is not for us, 0004 never came, 0006 before 0005.
    client.pending = ["0001", "0001", "0002", "0003", "0006", "0005"]
    client.window_end = 100.0
    client.check(log.last_id, final=True)
    assert totals.checked == 3  # 0001, 0002, 0006
    assert totals.duplicated_or_reordered == 2  # the second 0001, and 0005 after 0006
    assert totals.misdelivered == 1  # 0003
    assert totals.lost == 2  # 0004 skipped over; 0005 not in order


def test_the_checker_owes_nothing_outside_the_connection_window():
    soak = load_soak()
    log, totals = soak.Log(), soak.Totals()
    client = soak.Client("u1", log, totals)
    client.authed_at = 10.0
    log.add(soak.Published("0001", None, sent_at=9.0, acked_at=10.5))  # sent before its auth
    log.add(soak.Published("0002", None, sent_at=11.0, acked_at=11.5))
    log.add(soak.Published("0003", None, sent_at=12.0, acked_at=13.5))  # acked after its end
    client.window_end = 13.0
    client.pending = ["0002"]
    client.check(log.last_id, final=True)
    assert (totals.checked, totals.lost) == (1, 0)


def test_a_short_soak_passes_every_check():
    result = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "3", "--clients", "20", "--rate", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    table = result.stdout
    assert result.returncode == 0, table + result.stderr[-3000:]
    assert re.search(r"\| lost +\| +0 \|", table)
    assert re.search(r"\| duplicated or out of order +\| +0 \|", table)
    checked = re.search(r"\| deliveries checked by id \(per second\) +\| +([\d,]+) ", table)
    assert checked is not None
    assert int(checked.group(1).replace(",", "")) > 0
    assert "PASS" in table
