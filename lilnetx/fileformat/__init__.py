"""The ``.lnx`` file format: entropy coding (:mod:`.codec`), the container of checksummed
sections (:mod:`.container`), the architecture description (:mod:`.archspec`; any network as its
graph: :mod:`.graph`, :mod:`.graphtrace`, :mod:`.graphops`), the checks of an
index against its architecture (:mod:`.plan`), the limits a file must keep (:mod:`.limits`), the
encoders and the decoder (:mod:`.lnx`) and the size report (:mod:`.report`). It imports no
compression method: a method encodes its model with :func:`encode_model` (latent layers) or
:func:`encode_plain` (plain and quantized layers) and the bytes are written by :func:`write`."""

from lilnetx.fileformat.archspec import check_architecture, meta_network
from lilnetx.fileformat.container import MAGIC, SECTIONS, VERSION, Container, parse, read
from lilnetx.fileformat.graph import GraphNetwork
from lilnetx.fileformat.graphtrace import describe as describe_graph
from lilnetx.fileformat.lnx import (
    Decoded,
    build_network,
    decode_file,
    decode_latents,
    encode_model,
    encode_plain,
    load,
    save,
    write,
)

__all__ = ["MAGIC", "SECTIONS", "VERSION", "Container", "Decoded", "GraphNetwork",
           "build_network", "check_architecture", "decode_file", "decode_latents",
           "describe_graph", "encode_model", "encode_plain", "load", "meta_network", "parse",
           "read", "save", "write"]
