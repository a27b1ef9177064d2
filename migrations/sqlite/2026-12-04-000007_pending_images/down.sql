DROP TABLE pending_images;
