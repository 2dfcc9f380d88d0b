"""The Gradio app, one module per tab (compare_tab, train_tab, curves_tab, explain_tab), composed in mlm.ui.app."""

from mlm.ui.app import DemoApp, build_demo
from mlm.ui.common import CSS, training_allowed

__all__ = ["CSS", "DemoApp", "build_demo", "training_allowed"]
