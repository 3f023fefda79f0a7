"""Files and the network, done safely: atomic writes, image decoding, guarded HTTP, moves with undo.

The lowest layer: it knows nothing of models, parameters or pipeline steps.
"""
