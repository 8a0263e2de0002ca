"""C3Lier: LierLa plus 3x3 convs (ResNet blocks, samplers) with their own conv_dim/conv_alpha."""
