"""Defaults the command line shows in its help, kept in a module that imports
nothing heavy, so `captioner --help` and the read-only commands start fast."""

DEFAULT_PROMPT = (
    "Describe this photo in one or two factual sentences: the main subject, the setting, "
    "and any legible text. Do not speculate."
)
DEFAULT_VIDEO_PROMPT = (
    "Describe this video clip in one or two factual sentences: who or what is in it, what happens, "
    "and where. Do not speculate."
)
# Longest stretch of a clip a model that watches video is sent.
DEFAULT_MAX_VIDEO_SECONDS = 60.0
# What `estimate` assumes a caption's length to be.
DEFAULT_OUTPUT_TOKENS = 100
# More than any request could be billed for output.
MAX_OUTPUT_TOKENS = 1_000_000
