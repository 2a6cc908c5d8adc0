"""The built-in demo, `warmstart quickstart`: every method of the toolkit on the demo corpus, in one place.

`quickstart` runs the story in order and holds its recipes; `steps` holds one step per method (continual
pre-training with replay, Inheritune, AutoScale), each built only from the method modules in `warmstart.recipes`.
"""
