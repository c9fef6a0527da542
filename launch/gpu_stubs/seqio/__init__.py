"""A stand-in for ``seqio`` on machines without TensorFlow (the GPU image of ``gpu_bench.sh``).

JetStream 0.2.2's engine modules import ``seqio.vocabularies`` for two class names used in type
annotations only; our engine never builds a seqio vocabulary. Real seqio pulls in TensorFlow, which
cannot be installed there. Only ``launch/gpu_bench.sh`` puts this folder on ``PYTHONPATH``; the
package never imports it.
"""
