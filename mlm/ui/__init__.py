"""The Gradio app: mlm.ui.app composes one module per tab (compare_tab, train_tab, curves_tab, explain_tab,
timelapse_tab); gradio_patches holds every change to Gradio; jobs/ runs training processes; plots/ draws."""
