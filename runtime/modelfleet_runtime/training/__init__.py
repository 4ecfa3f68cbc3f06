"""The retraining Job's trainer (`modelfleet-runtime train`), in three parts.

- graph.py: an ONNX graph as trainable numpy (forward, backward, new weights);
- task.py: what is learned (targets, loss, Adam, evaluation);
- job.py: the run on the feedback volume and its command line.
"""

from .errors import NotEnoughSamples, TrainingError, UnsupportedModel
from .graph import Network
from .job import Options, cli_main, run

__all__ = ["Network", "NotEnoughSamples", "Options", "TrainingError", "UnsupportedModel", "cli_main", "run"]
