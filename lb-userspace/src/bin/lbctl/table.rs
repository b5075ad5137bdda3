//! Aligned text tables: the output of every command except `config`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A text table: a header row, then rows, each column padded to its widest
/// cell and separated by two spaces. No trailing whitespace.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) columns: Vec<(String, Align)>,
    /// Whether the header row is printed.
    pub(crate) header: bool,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|&(name, align)| (name.to_string(), align))
                .collect(),
            header: true,
            rows: Vec::new(),
        }
    }

    pub(crate) fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    pub(crate) fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|(name, _)| name.clone()).collect();
        let lines: Vec<&Vec<String>> = self
            .header
            .then_some(&header)
            .into_iter()
            .chain(&self.rows)
            .collect();
        let ncols = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; ncols];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                let align = self.columns.get(i).map_or(Align::Left, |&(_, a)| a);
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(width - cell.chars().count());
                match align {
                    Align::Left => {
                        text.push_str(cell);
                        text.push_str(&pad);
                    }
                    Align::Right => {
                        text.push_str(&pad);
                        text.push_str(cell);
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_each_column_to_its_widest_cell() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(["a".into(), "1".into(), "x".into()]);
        t.row(["longer".into(), "12345".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME        N  NOTE\n\
             a           1  x\n\
             longer  12345\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes_and_may_omit_the_header() {
        let mut t = Table::new(&[("K", Align::Left), ("V", Align::Right)]);
        t.header = false;
        t.row(["é".into(), "1".into()]);
        t.row(["ab".into(), "22".into()]);
        assert_eq!(t.render(), "é    1\nab  22\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        assert_eq!(t.render(), "A  B\n");
        let mut t = Table::new(&[]);
        t.header = false;
        assert_eq!(t.render(), "");
    }

    // --- arguments to requests, one test per subcommand group
}
