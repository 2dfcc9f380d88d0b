"""Masked language modelling for the classroom: data, model, training, prediction and the Gradio app.

Read in this order: hub -> data -> model -> config -> step -> train (training); predict -> runs -> plots -> ui (app).
"""
