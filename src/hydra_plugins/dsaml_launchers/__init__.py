"""dsaml's sweep launchers (Hydra finds launcher plugins only under hydra_plugins): see .launchers."""
