"""Pure-PyTorch HandsOff core. Public names are re-exported here (see __all__)."""
