"""``shardlab explore``: a checkpoint in the browser.

A small local web app (Starlette, ``explore.app``) over one loaded network. For a maze policy the
page edits a maze (cheese, mouse, walls), and the server answers with the policy's vector field over
every open square, the value and move probabilities at the mouse, one layer's activations, the
decision square and shortest paths, with the evals' cheese-vector steering and retargeting edits
applied (``explore.maze_session``); for a decision transformer it plays a seeded level at a target
return and shows the action probabilities and attention patterns (``explore.dt_session``). Every
number comes from the evals' own functions; request bodies are checked strictly
(``explore.validate``). Needs the ``explore`` extra (starlette, uvicorn).
"""
