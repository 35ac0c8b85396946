"""What a hostile or broken Dask worker could send back (imported by the workers of
tests/test_cluster.py through PYTHONPATH)."""

import os
import pathlib


class Reducer:
    """An object whose unpickling writes a marker file: proof that someone unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path(self.marker).write_text, (f"unpickled in pid {os.getpid()}",))


def reducer(marker: str):
    return Reducer(marker)
