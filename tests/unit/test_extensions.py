"""The DeepSpeed CPU comm op's folder, as crdist finds it without importing DeepSpeed, is the one
DeepSpeed builds into and loads from."""

import subprocess
import sys

from crdist.train.extensions import COMM_OP_NAME, extensions_root


def test_the_comm_op_is_looked_for_where_deepspeed_builds_it(deepspeed_cpu_op):
    from torch.utils.cpp_extension import _get_build_directory

    from deepspeed.accelerator import get_accelerator

    from crdist.train.engine import COMM_OP, cpu_comm_op_cached
    from crdist.train.extensions import comm_op_built

    builder = get_accelerator().create_op_builder(COMM_OP)
    assert builder.name == COMM_OP_NAME
    assert _get_build_directory(builder.name, False) == str(extensions_root() / COMM_OP_NAME)
    # Built once by the fixture: both checks see it, the cheap one with no import at all.
    assert comm_op_built() and cpu_comm_op_cached()


def test_the_check_imports_neither_torch_nor_deepspeed():
    code = ("import sys; from crdist.train.extensions import comm_op_built; comm_op_built(); "
            "print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
