"""Pipeline stages: prepare → train → evaluate → register. Stages never import each other."""
