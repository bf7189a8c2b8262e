"""``mask-run``: train → export → submit in one command (:mod:`workflow.cli`).

It imports ``training``, ``export`` and ``serving`` (each step runs that stage's own command), which is
why it is a package of its own: none of those may import the others' commands.
"""
