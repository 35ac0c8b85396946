"""The course's nbgrader harness: release, validate, autograde, feedback and the kernel sandbox.

See the grader contract in the course design (``attn-grade``; also ``python -m grader``).
"""
