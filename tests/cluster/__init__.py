"""A Caviar cluster on several hosts: Ray nodes in Linux network namespaces, one node per host."""
