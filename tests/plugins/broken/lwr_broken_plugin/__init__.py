"""A plugin whose entry point fails, as a half-finished package would."""


def register() -> None:
    raise RuntimeError("this plugin is unfinished")
