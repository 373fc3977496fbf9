//! Which rows of a batch are views of which image.

use std::collections::BTreeMap;

use crate::error::DistillError;

/// Which rows of a batch are views of which image, and which view each is (view 0 is the
/// un-augmented one). Multi-view objectives (DLKD's correlation) read it from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    image: Vec<usize>,
    view: Vec<usize>,
}

impl Views {
    /// Rows ordered image-major, view-minor: row `r` is view `r % views` of image `r / views`
    /// (DLKD's four rotations: `Views::image_major(batch, 4)`).
    pub fn image_major(images: usize, views: usize) -> Self {
        let rows = 0..images * views;
        Self {
            image: rows.clone().map(|r| r / views.max(1)).collect(),
            view: rows.map(|r| r % views.max(1)).collect(),
        }
    }

    /// Any layout: row `r` is view `view[r]` of image `image[r]`. Every image needs exactly one
    /// view 0.
    pub fn new(image: Vec<usize>, view: Vec<usize>) -> Result<Self, DistillError> {
        let bad = |reason: String| Err(DistillError::InvalidViews { reason });
        if image.len() != view.len() {
            return bad(format!(
                "{} image ids for {} view ids",
                image.len(),
                view.len()
            ));
        }
        let mut plain = BTreeMap::new();
        for (&i, &v) in image.iter().zip(&view) {
            if v == 0 && plain.insert(i, ()).is_some() {
                return bad(format!("image {i} has two un-augmented views (view 0)"));
            }
        }
        if let Some(i) = image.iter().find(|i| !plain.contains_key(*i)) {
            return bad(format!("image {i} has no un-augmented view (view 0)"));
        }
        Ok(Self { image, view })
    }

    /// The number of rows described.
    pub fn rows(&self) -> usize {
        self.image.len()
    }

    /// The rows holding view 0, in order.
    pub fn plain_rows(&self) -> Vec<usize> {
        (0..self.rows()).filter(|&r| self.view[r] == 0).collect()
    }

    /// The rows holding augmented views, in order.
    pub fn augmented_rows(&self) -> Vec<usize> {
        (0..self.rows()).filter(|&r| self.view[r] != 0).collect()
    }

    /// The image of each row.
    pub fn images(&self) -> &[usize] {
        &self.image
    }
}
