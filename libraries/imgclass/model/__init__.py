"""The networks and classifiers: backbones, preprocessing, featurization, refinement, the SVM.

Nothing here reads parameters or knows about dataset folders: functions take
explicit values and config objects, so the pipeline, the service and a user's
own code call them the same way.
"""
