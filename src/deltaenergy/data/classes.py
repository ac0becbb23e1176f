"""ID class names per ID dataset (prompt wording, in label order). Import-light: the workflow's config
check reads it without loading image or model code."""

FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot"]

ID_CLASSES = {"fashion_mnist": FASHION_MNIST_CLASSES}
