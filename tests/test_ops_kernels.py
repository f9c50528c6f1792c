"""What the Triton Adam kernel compiles to on a GPU, checked without one; from a mutation audit.

The interpreter (``TRITON_INTERPRET=1``) runs the kernel bodies with NumPy, where ``/`` and ``sqrt``
are IEEE round-to-nearest anyway: that their GPU code rounds like the reference too (``div_rn`` /
``sqrt_rn``, not the approximate ``div.full`` / ``sqrt.approx`` that plain ``/`` and ``tl.sqrt`` give)
shows only in the compiled code. ``test_triton_ops.py`` compiles every variant; this reads Adam's PTX
(the other kernels neither divide nor take roots).
"""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

PTX_OF = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from decinv_fast.kernels import adam_residual_step, fsm_residual_step, km_residual_step

name = sys.argv[1]
kernel = getattr(globals()[name], name + "_kernel")
signature = {}
for arg in kernel.arg_names:
    if arg in ("HAS_MASTER", "BLOCK"):
        signature[arg] = "constexpr"
    elif arg in ("n", "n_blocks"):
        signature[arg] = "i64"
    elif arg == "step_ptr":
        signature[arg] = "*i64"
    else:
        signature[arg] = "*fp32" if arg.endswith("_ptr") else "fp32"
source = ASTSource(fn=kernel, signature=signature, constexprs={"HAS_MASTER": True, "BLOCK": 256})
print(triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"])
"""


def ptx(name: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", PTX_OF, name], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_adam_divides_and_takes_square_roots_rounded_to_nearest(tmp_path):
    """Adam's three divisions and its square root (per element) are IEEE round-to-nearest in fp32, as in
    the reference; nothing approximate."""
    code = ptx("adam_residual_step", tmp_path)
    divisions, roots = len(re.findall(r"\bdiv\.rn\.f32\b", code)), len(re.findall(r"\bsqrt\.rn\.f32\b", code))
    assert roots > 0 and divisions == 3 * roots
    assert not re.search(r"\b(div\.(full|approx)|sqrt\.approx|rcp\.approx|ex2\.approx)\b", code)
