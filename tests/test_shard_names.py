"""Shard names in model.safetensors.index.json stay inside the checkpoint (issue #14, Low).

Before: ``folder / name`` with ``../x.safetensors`` or ``/abs/x.safetensors`` read a file
outside the checkpoint folder without a word, here a real shard copied next to the folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from packer.convert.checkpoint import INDEX_FILE, Checkpoint
from packer.errors import ConversionError


@pytest.mark.parametrize("where", ["parent", "absolute", "deeper"])
def test_shard_outside_the_folder_is_refused(
    where: str,
    tiny_llama_bpe_sharded: Path,
    copy_checkpoint: Callable[[Path], Path],
) -> None:
    folder = copy_checkpoint(tiny_llama_bpe_sharded)
    index_path = folder / INDEX_FILE
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    outside = folder.parent / shard  # the same bytes, outside the checkpoint
    shutil.copy(folder / shard, outside)
    (folder / "sub").mkdir()
    name = {
        "parent": f"../{shard}",
        "absolute": str(outside),
        "deeper": f"sub/../../{shard}",
    }[where]
    index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConversionError) as err:
        Checkpoint(folder)
    msg = str(err.value)
    assert f"names the shard {name!r}, which is not a file inside the checkpoint folder" in msg
    assert "\n" not in msg


def test_shard_in_a_subfolder_is_fine(
    tiny_llama_bpe_sharded: Path, copy_checkpoint: Callable[[Path], Path]
) -> None:
    folder = copy_checkpoint(tiny_llama_bpe_sharded)
    index_path = folder / INDEX_FILE
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (folder / "weights").mkdir()
    (folder / shard).rename(folder / "weights" / shard)
    index["weight_map"] = {
        k: (f"weights/{shard}" if v == shard else v) for k, v in index["weight_map"].items()
    }
    index_path.write_text(json.dumps(index))
    assert folder / "weights" / shard in Checkpoint(folder).files
