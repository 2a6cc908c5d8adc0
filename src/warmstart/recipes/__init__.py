"""Recipes compose the layers below (data, models, train, eval); they hold no training code of their own."""
