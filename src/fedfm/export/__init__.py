"""`fedfm export`: a trained run as deployable artefacts (budget-sized subnetworks, peft adapters, merged weights)."""
