"""`gan-engine train` under mpiexec: rank 0 runs the ordinary Run, which writes the run folder and reports; every
other rank runs OtherRankRun, which trains and takes part in every collective (the averaged gradients and losses,
the parameter check, stopping together) and writes and prints nothing."""
import os
import sys

from .run import Run


class OtherRankRun(Run):
    """A run on a rank other than 0: the same steps and collectives as rank 0's Run, no files, no output."""

    def _open_folder(self, resumed, restart):
        pass

    def say(self, line):
        pass

    def evaluate(self, step):
        return None

    def _log(self, step, metrics, bar, quality=None):
        self.trainer.read_metrics(metrics)  # a collective: every rank reads the losses at the same steps

    def save_pictures(self, step):
        pass

    def checkpoint(self):
        return None


def run_for_rank(comm, progress):
    """(the Run class of this rank, whether it shows a progress bar): rank 0 the ordinary Run; any other rank an
    OtherRankRun, with its standard output silenced (errors and warnings still reach standard error)."""
    if comm.rank == 0:
        return Run, progress
    sys.stdout = open(os.devnull, "w")
    return OtherRankRun, False
