"""JAX's persistent compilation cache, on by default for train.py, eval.py and predict.py.

A re-run or resume of the same config finds its compiled programs on disk, so it reaches its
first step in seconds instead of compiling again. The folder is $JAX_COMPILATION_CACHE_DIR
when set, else $CSRE_JAX_CACHE, else ~/.cache/csre_jax/xla; CSRE_JAX_CACHE=off turns it off.
Entries are keyed by the program, the jax version and the device, so a stale entry is never
used; the folder can be deleted at any time.
"""

import os
from pathlib import Path

import jax

DEFAULT_FOLDER = Path("~/.cache/csre_jax/xla")


def enable() -> Path | None:
    """Turns the cache on (unless configured already or switched off); returns its folder."""
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    folder = os.environ.get("CSRE_JAX_CACHE", str(DEFAULT_FOLDER))
    if folder == "off":
        return None
    folder = Path(folder).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Model initialisation compiles hundreds of small programs: cache those too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
