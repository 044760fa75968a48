//! Batch augmentation on the device (kernels/augment.cu).
