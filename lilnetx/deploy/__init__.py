"""Deployment: the slim network with zero channels physically removed (:mod:`.slimming`), its
latency (:mod:`.latency`), and the file, FLOPs, latency and ONNX export of a trained run
(:mod:`.export`)."""
