"""tf_mbalign: post-pretraining alignment of multilingual BERT (Pan et al., 2021).

Importing the package changes nothing in the process. The command-line tools
(and the tests, and `.ci/run`) set TensorFlow's environment defaults before
TensorFlow is imported: `tf_mbalign.runtime.set_tensorflow_environment_defaults()`
(oneDNN on, the Keras backend, TF's native log level). A library user who
imports TensorFlow first keeps their own settings; see BUILD_NOTES.md.
"""

__version__ = "0.1.0"
