"""Caviar's service: the API process (``api/``), its store (``store/``), the study driver that runs
on Ray (``runner/``), and what they share: settings, the study definition, the jobs door to Ray,
the client and the CLI. The README's Layout section has the tree."""
