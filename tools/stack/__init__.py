"""`python -m tools.stack`: the whole service run locally, supervised.

settings: what the stack runs and where (StackSettings, validate); cli: the flags, the banner and main;
parts: which processes make a stack (Tritons, inference services, gateways) and how each is told ready;
supervisor: starting, restarting and stopping those processes (Part, Supervisor).
"""
