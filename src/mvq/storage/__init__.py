"""Files on disk, safely: atomic and verified writes (`atomic`), one process per folder (`locks`), third-party
pickles read without running their code (`safe_pickle`), the pretrained networks' files found and checked
(`network_weights`)."""
