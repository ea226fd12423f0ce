{# The book's tables take their styles from _static/tables.css, by class: no <style> of the Styler's own. #}
