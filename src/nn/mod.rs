//! Networks: the parameter store, layers, the ResNet encoders and the SimCLRv2 model.

pub mod info;
pub mod layers;
pub mod model;
pub mod params;
pub mod resnet;
