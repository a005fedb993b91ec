"""Every command's user errors: one `Error: ...` line on stderr, nothing on stdout, exit 1 (2 for usage)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from compressc.cli import main

CASES = [
    (["build", "--arch", "sm80"], 1, "sm_80 cannot run compressc kernels"),
    (["build", "--rope", "32"], 1, "--rope needs --spec"),
    (["wheel", "--arch", "banana"], 1, "banana"),
    (["opt"], 1, "give exactly one of FILE or --spec"),
    (["emit"], 1, "give exactly one of FILE or --spec"),
    (["cache", "why", "--spec", "c4a", "--quant-block", "48"], 1, "quant_block"),
    (["tune"], 1, "give exactly one of --prepare DIR, --measure DIR or --apply RESULTS.json"),
    (["inspect", "--arch", "sm7"], 1, "sm7"),
    (["build", "--no-such-flag"], 2, "No such option '--no-such-flag'"),
]


@pytest.mark.parametrize(("args", "code", "text"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_errors_go_to_stderr_with_a_non_zero_exit(args, code, text, tmp_path):
    result = CliRunner().invoke(main, args, env={"COMPRESSC_CACHE_DIR": str(tmp_path)})
    assert result.exit_code == code, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and text in errors[0], result.stderr
