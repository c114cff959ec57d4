"""Forms an exported model ships in, for services that are not written in Python: a verifiable bundle
(model, manifest, golden vectors) and a Triton model repository. They sit above runtime_check because a
bundle's vectors are the float64 golden's answers, and checking a bundle runs the runtimes."""
